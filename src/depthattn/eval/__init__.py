"""Evaluation: validation perplexity, looped depth scaling and zero-shot tasks through lm-eval."""

from depthattn.eval.perplexity import EvalResult, evaluate_perplexity

__all__ = ["EvalResult", "evaluate_perplexity"]
