"""The decoding loop: rows join and leave one batch at every step (no Ray).

``loop`` schedules (which requests run in a step), ``blip2_engine`` runs a step on BLIP-2
(prefill of new rows, one token for every running row), ``sampling`` picks each row's token
with its own settings and ``outputs`` turns tokens into text and finishes rows.
"""
