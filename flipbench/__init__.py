"""flipbench: does a compressed LLM still answer like its baseline, question by question?"""

__version__ = "0.1.0"
