"""samplescope's user-facing layer: the Gradio app and the ``samplescope`` CLI."""
