"""Evaluation: the loss and the metrics derived from it (bpb, perplexity, token accuracy), HellaSwag."""
