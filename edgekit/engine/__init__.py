"""The inference engine: a parent-side Engine driving llama-cpp-python in a child process."""
