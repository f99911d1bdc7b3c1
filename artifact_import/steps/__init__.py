"""The DOWNLOAD, VERIFY and ARCHIVE steps the pipeline composes."""
