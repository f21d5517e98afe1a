"""ROUGE-L for the XL-Sum tasks, with neuronspec's tokenisation that works for every script."""

from neuronspec.evaluate.rouge import rouge_l


def process_results(doc, results):  # noqa: ANN001, ANN201 - lm-eval's process_results signature
    return {"rougeL": rouge_l(results[0].strip(), doc["summary"])}
