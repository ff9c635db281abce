"""Scale-out on Ray: the replay farm (replay.scale.farm) and the cluster helpers
(replay.scale.cluster). The coordinator owns the chain side; workers only compute."""
