"""What a study's trials add up to, computed apart from drawing them: the Pareto front, the reference point and the
hypervolume, dominance and why a baseline stays undominated (``front``); the trials as a table and the files a
run writes (``outputs``); the rules that pick one trial of a front (``selection``: ``python -m search.pick`` picks
with them, the report shows what they pick). Below the search loop, above the storage."""
