"""The app's workflows, shared by the UI (app/ui) and the CLI (app/commands): storing runs,
prompt sets and sweeps, training reward models on votes, and the self-contained HTML report.
Nothing here imports Gradio."""
