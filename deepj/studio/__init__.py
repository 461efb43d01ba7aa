"""The studio: a local web page for a trained run (`python -m deepj.studio RUN_OR_CHECKPOINT`).

`__main__.py` is the command (checks the checkpoint, loads the model, serves the page), `page.py` the page (Gradio),
`jobs.py` what one click of Generate does (form -> `deepj.compose.Request` -> pieces -> MIDI, picture, audio).
"""
