"""The destination's journal: what artifact-import keeps beside an artifact, behind one object.

``Journal(storage)`` is the only way the pipeline and ``verify`` reach it:
the manifest of the last import (:mod:`.manifest`), files an interrupted
import parked for the next one (:mod:`.record`), the intent of a commit under
way (:mod:`.intent`), the re-import decision (:mod:`.present`), and the check
against the manifest (:mod:`.fsck`).
"""

from .fsck import FsckReport
from .journal import Journal
from .manifest import MANIFEST_PATH
from .record import RECORD_PATH, Adopted, ParkedSummary

__all__ = ["MANIFEST_PATH", "RECORD_PATH", "Adopted", "FsckReport", "Journal", "ParkedSummary"]
