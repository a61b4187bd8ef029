"""The ACIfile front end: `parse` turns text into Statements with the Lark grammar
(grammar/acifile.lark), `compile` gives them meaning (ARG substitution, stages,
checks with positions) and returns a Plan. Imports only acbuild.plan and below:
nothing here touches a rootfs, an image or a namespace."""
