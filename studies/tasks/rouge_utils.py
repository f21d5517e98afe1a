"""ROUGE-L for the summarisation tasks, with neuronspec's tokenisation that works for every script
(rouge-score's own keeps only [a-z0-9], so a Chinese or Hindi summary would score 0)."""

from neuronspec.evaluate.rouge import rouge_l


def process_summary(doc, results):  # noqa: ANN001, ANN201 - lm-eval's process_results signature (XL-Sum rows)
    return {"rougeL": rouge_l(results[0].strip(), doc["summary"])}


def process_reference(doc, results):  # noqa: ANN001, ANN201 - rows written from a neuronspec corpus (meta.reference)
    return {"rougeL": rouge_l(results[0].strip(), doc["reference"])}
