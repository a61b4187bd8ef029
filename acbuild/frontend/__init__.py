"""The ACIfile and Dockerfile front end: `source` reads what BuildKit decides line
by line (parser directives, the escape character, continuations, heredocs),
`parse` turns the text into Statements with the Lark grammar
(grammar/acifile.lark), `expand` is Docker's word expansion, and `compile` gives
the Statements meaning (stages, ARG scopes, Dockerfile words as plan
instructions, checks with positions) and returns a Plan. Imports only
acbuild.plan and below: nothing here touches a rootfs, an image or a namespace
(what it needs to know of a base image, the CLI hands it as a function)."""
