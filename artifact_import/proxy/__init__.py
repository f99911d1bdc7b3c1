"""What a storage proxy runs: the HTTP routes (:mod:`.routes`), the task service that runs imports
(:mod:`.service`), the fleet of proxies sharing tasks on Redis (:mod:`.fleet`) and webhooks (:mod:`.webhooks`)."""
