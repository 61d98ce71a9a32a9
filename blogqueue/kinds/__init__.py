"""The built-in job kinds, one module each: stages, prompts, result, and `register(app)`.

They are registered through the public `App.kind` / `App.prompt` calls, like a
user's kinds; `blogqueue.app` lists which ones an `App()` starts with.
"""
