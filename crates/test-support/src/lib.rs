//! Mock model servers speaking the Anthropic, OpenAI and Ollama wire formats, with fault injection
