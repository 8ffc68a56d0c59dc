"""Evaluations as plug-ins: one module per kind, chosen by `config.evals`.

`common.py` holds the interface (`Evaluator`, `EvalOutput`, `EvalContext`),
`from_config`, the predict function and multi-host gathering; every other
module here is an evaluator type named after its file (`file_level`).
"""
