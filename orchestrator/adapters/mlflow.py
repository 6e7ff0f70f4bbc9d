"""MLflow 3.17's private API, in one room (see `orchestrator.adapters`).

- `save_example`: the input example as MLflow writes it beside a model (`input_example.json` and
  the MLmodel's reference to it), for a model whose flavor Consortium saves itself.
- `forget_engines`: MLflow keeps one SQLAlchemy engine per store URI for the life of the process,
  also after the store failed to open; a retry must start from a clean connection.
- `upgrade_db`: MLflow's own schema migration, to finish one that died half-way.
"""
from __future__ import annotations

WRITTEN_FOR = ("mlflow", "3.17.2")


def save_example(mlflow_model, input_example, path: str) -> None:
    from mlflow.models.utils import _save_example

    _save_example(mlflow_model, input_example, path)


def forget_engines(uri: str) -> None:
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as RegistryStore
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    for store in (SqlAlchemyStore, RegistryStore):
        engine = store._engine_map.pop(uri, None)
        if engine is not None:
            engine.dispose()


def upgrade_db(engine) -> None:
    from mlflow.store.db.utils import _upgrade_db

    _upgrade_db(engine)
