"""Where a study lives and what it keeps: the Optuna storage behind ``study.storage`` (``backends``: SQLite, the
journal file, PostgreSQL, with reconnection and heartbeats), a local PostgreSQL cluster (``postgres``), the lock
workers share (``lock``), what a lost worker leaves (``faults``), the files kept in Optuna's artifact store
(``artifacts``: shared caches and each trial's ONNX model) and the few Optuna internals the engine reaches
(``_optuna``). The lowest layer of ``search`` but its inputs (``data``, ``models``)."""
