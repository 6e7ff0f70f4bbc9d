"""The job spec: one pydantic model per YAML section, YAML loading with overrides, user errors.

Knows nothing of torch, Ray or MLflow. Import the modules themselves (`orchestrator.spec.job`,
`orchestrator.spec.loading`): this package file stays empty so that strategies, which declare their
own options on `orchestrator.spec.base.Spec`, can be imported first without a cycle.
"""
