"""Reading what people share: files and links in, `bot.types.Document` values out.

A part of its own, beside the core (issue #17): *readers* (`readers/`) turn bytes into text by
the type the bytes turn out to be, in a child process with a time limit (`sandbox`); a
*fetcher* (`fetch`) brings a link's bytes, only through the request-forgery guard (`guard`);
`intake` puts the two together for the adapters, and `passages` cuts documents into ranked
passages for the core. Nothing here imports the core, a platform, storage or an engine; the
core receives `Document` values and never imports the HTTP client or the parsers.
"""
