"""The device-side ``cmdv`` commands (run, chat, serve, models, packs, keys) and their error reporting."""
