"""Istio's Fortio perf runs on `pylon mesh`, shared by `pylon demo` and `benchmarks/mesh_perf.py`.

One mesh at a time on this machine (namespace names are global): `lock.py` takes /tmp/pylon-bench.lock,
`meshctl.py` drives `pylon mesh` as a user would (its CLI, in subprocesses) and always ends with `mesh down`,
`modes.py` names Istio's perf modes and what each one crosses, `inputs.py` writes the IstioOperator install
file and the gateway's resources, `runs.py` runs one load in a client pod and measures what it cost each proxy
(`pylon.bench.procfs`), `session.py` is one mesh's life (up, workloads, every mode once, down), and
`csv_rows.py` and `summary.py` turn the runs into Istio's CSV columns and medians. The mesh is driven through
its CLI, not imported: the kit measures the mesh as a user runs it.
"""
