"""The hospital as Flower ClientApps: `app`, and `secagg_app` for secure aggregation.

The server sends the job spec and the agreed schema in every message's config, so the same app runs
in Flower's simulation engine and in its deployment engine (`flower-supernode` with
`--node-config 'partition-id=0 num-partitions=3 data-path="/data/site.csv"'`; see
`consortium federation supernode`). In the deployment engine one Flower App serves both: `app`
hands the messages of Flower's SecAgg+ workflow (legacy fit/evaluate records) to `secagg_app`.

Messages a hospital answers (`clients.handlers`):
  query     before a schema is agreed (deployment): its columns, labels and row counts; then
            per-feature observed count, sum and sum of squares of its training rows (input scaling)
  train     local epochs from the global model -> updated weights + train loss
  evaluate  the global model on its own test rows -> loss and metrics, confusion counts
            (classification) or error sums (regression) for exact pooling
Importing this module loads Flower, torch and the job spec, never MLflow, Ray, pandas or matplotlib
(tests/unit/test_layering.py checks it in a fresh process): in the deployment engine it is imported
once per message.
"""
from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from clients import handlers, queries, secagg, site
from orchestrator.core.packing import pack_message, unpack_message

secagg_app = ClientApp(mods=secagg.secagg_mods())
secagg_app.query()(queries.query)
secagg_app.train()(secagg.secagg_train)
secagg_app.evaluate()(secagg.secagg_evaluate)

_LEGACY = ("fitins", "evaluateins", "secaggplus")  # record names of Flower's SecAgg+ workflow


class _Hospital(ClientApp):
    """The plain handlers, except that SecAgg+ messages go to `secagg_app`; every message passes
    the hospital's own policy, ledger and audit log first (`clients.site.guard`). A message whose
    arrays came packed (deployment, `orchestrator.core.packing`) is answered packed."""

    def __call__(self, message: Message, context: Context) -> Message:
        packed = unpack_message(message)   # the deployment engine's wire: arrays packed as one (core.packing)
        reply = site.guard(message, context, self._route)
        if packed:
            pack_message(reply)
        return reply

    def _route(self, message: Message, context: Context) -> Message:
        if any(k.startswith(_LEGACY) for k in message.content.keys()):
            return secagg_app(message, context)
        return super().__call__(message, context)


app = _Hospital()
app.query()(queries.query)
app.train()(handlers.train)
app.evaluate()(handlers.evaluate)
