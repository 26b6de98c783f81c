"""Top-k accuracy as an `evaluate` metric module that loads by path (`evaluate.load(folder)`), offline.

Predictions are each example's best classes, best first (e.g. `logits.topk(5).indices`), not the full score
vectors: k ids per example are all the metric needs, and far less to hold than K scores for large K.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
The fraction of examples whose reference class is among the k highest-ranked predicted classes.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `int`): per example, predicted class ids ranked best first (at least k).
    references (`list` of `int`): true class ids.
    k (`int`, default 5): how many of the ranked predictions count.
Returns:
    top_k_accuracy (`float`): in [0, 1].
Example:
    >>> metric = evaluate.load("path/to/hf_vit/training/metrics/top_k_accuracy")
    >>> metric.compute(predictions=[[3, 1], [0, 2]], references=[1, 1], k=2)
    {'top_k_accuracy': 0.5}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class TopKAccuracy(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("int64")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, k: int = 5) -> dict[str, float]:
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}.")
        references = np.asarray(references)
        if references.size == 0:
            raise ValueError("top-k accuracy of no examples is undefined: predictions and references are empty.")
        shortest = min(len(ranked) for ranked in predictions)
        if shortest < k:
            raise ValueError(f"top-{k} accuracy needs at least {k} ranked classes per example; one has {shortest}.")
        ranked = np.asarray([list(row[:k]) for row in predictions])
        return {"top_k_accuracy": float((ranked == references[:, None]).any(axis=1).mean())}
