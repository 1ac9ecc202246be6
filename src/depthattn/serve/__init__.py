"""Serving engines: the vLLM plugin (``depthattn.serve.vllm_plugin``, loaded by vLLM through its
``vllm.general_plugins`` entry point) and the model class vLLM runs for depthattn folders."""
