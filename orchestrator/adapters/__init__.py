"""Third-party private API, one room per library: flower.py, ray.py, mlflow.py, torch.py.

What Consortium does with a library beyond its public API lives in that library's module here and
nowhere else (tests/unit/test_layering.py checks it), and each module names the version it was
written against in `WRITTEN_FOR` (tests/unit/test_adapters.py fails on another): an upgrade of
Flower, Ray, MLflow or torch re-checks one module. Importing this package imports none of them.
"""
