"""The supervisor behind `daq up DIR`: one directory of TOML files becomes a running system.

It starts the same commands a person would start by hand (`daq broker`, `daq store ...`,
`daq job run ...`) as child processes, in an order that loses nothing, keeps them running,
writes the stats files, numbers the runs and answers a control endpoint (`daq ctl`).

- `plan`: load and validate a whole directory into the list of processes to run.
- `process`: the one child-process runner (logs, restart policy, backoff).
- `supervisor`: the main loop (start order, heartbeats, ordered shutdown).
- `status`: what it shows of itself (the `status` reply, the stats files' contents).
- `statsfiles`: the rows and columns of stats.csv and stats_remote.csv.
- `runs`: run numbers, start/stop times, config snapshots.
- `control`: the control endpoint and its client.
"""
