"""SelfPiCo: run partial code as far as possible by predicting the values of undefined names.

instrument.py rewrites a snippet so every name/attribute/import goes through hooks and every
statement is preceded by a line marker; runtime.py is the hook side, executed only inside the
sandbox; predictors.py guesses values (as-is, naive, rule-based, LLM-guided); executor.py runs the
snippet again and again in the sandbox, adding one predicted value per run, with error feedback.
"""
