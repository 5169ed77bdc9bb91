"""A DICOM node that runs by itself (``monai-lung serve``): studies arrive by C-STORE, findings go back to the PACS.

Modules, from the bottom up:

- :mod:`~monai_lung.node.queue`: the durable job queue, one SQLite file in WAL mode under the work dir;
- :mod:`~monai_lung.node.storage`: the Storage SCP (pynetdicom): calling-AE allow-list, atomic instance files,
  refusal (C-STORE status out of resources) when the disk is full;
- :mod:`~monai_lung.node.adapter`: the one module that calls the detector and the DICOM writers;
- :mod:`~monai_lung.node.sender`: results out by C-STORE (pynetdicom) and STOW-RS;
- :mod:`~monai_lung.node.worker`: a job's phases (snapshot, detect, send) with retries and backoff;
- :mod:`~monai_lung.node.monitor`: ``GET /health`` and ``GET /metrics``;
- :mod:`~monai_lung.node.server`: the node itself (threads, signals, recovery at start);
- :mod:`~monai_lung.node.cli`: ``monai-lung serve``.

Nothing lost, nothing twice. An instance is acknowledged (C-STORE success) only after its file is renamed into
place and its row committed; a study becomes a job in the same transaction that clears its "new instances"
flag; a worker takes a job in one transaction, and every phase after it writes only files named by the job, by
atomic rename, and records its progress in the database. A job that was running when the process died is
taken again at start, and repeating a phase is harmless: the result objects' UIDs derive from the input
instances, so a PACS that receives an object twice keeps one copy. Hence every received study ends with
exactly one done (or failed) job per set of instances, and exactly one copy of each result object in the PACS.
docs/deploy.md gives the whole argument and the operations side.
"""
