"""Measure what a model does on this box: latency, throughput, memory and quant quality."""
