"""The hospital as Flower ClientApps: `app`, and `secagg_app` for secure aggregation.

The server sends the job spec and the agreed schema in every message's config, so the same app runs
in Flower's simulation engine and in its deployment engine (`flower-supernode` with
`--node-config "partition-id=0 num-partitions=3"` and, for natural silos, `data-path=/data/site.csv`).

Messages a hospital answers (`clients.handlers`):
  query     per-feature observed count, sum and sum of squares of its training rows (input scaling)
  train     local epochs from the global model -> updated weights + train loss
  evaluate  the global model on its own test rows -> loss and metrics, confusion counts
            (classification) or error sums (regression) for exact pooling
Importing this module loads Flower, torch and the job spec, never MLflow, Ray or matplotlib
(tests/unit/test_layering.py checks it in a fresh process).
"""
from __future__ import annotations

from flwr.clientapp import ClientApp

from clients import handlers, secagg

app = ClientApp()
app.query()(handlers.query)
app.train()(handlers.train)
app.evaluate()(handlers.evaluate)

secagg_app = ClientApp(mods=secagg.secagg_mods())
secagg_app.query()(handlers.query)
secagg_app.train()(secagg.secagg_train)
secagg_app.evaluate()(secagg.secagg_evaluate)
