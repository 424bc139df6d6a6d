"""The search loop: the Optuna study a search runs (``study``: open, resume, enqueue, optimize, the objective of
a trial), the baselines it starts from (``baselines``), the cheap first look at a trial (``screening``) and the
candidates timed again together at the end of a search (``remeasure``). Above it the app and the commands; below
it one trial (``search.pipeline``, ``search.training``, ``search.sensitivity``) and the results and storage."""
