"""Gradio-free rendering: sanitised text and HTML (render), the figures and tables of a run's
trace (trace) and of a sweep (sweep). The UI shows them; the HTML report embeds them."""
