"""Many workers on one study: where it is stored (``storage``), the lock they share (``lock``), what a lost worker
leaves (``faults``), the files they share through Optuna's artifact store (``shared``) and the command that starts
them on one host (``local``)."""
