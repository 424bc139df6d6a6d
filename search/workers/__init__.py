"""Many workers on one study, on one host: the launcher (``local.launch``: ``python -m search study.workers=4``
starts that many worker processes and waits for them) and one worker's process (``child``). Where the study lives,
the lock the workers share, what a lost worker leaves and the files they share are the storage layer's
(``search.storage``), below the search loop, so one process's search uses them too."""
