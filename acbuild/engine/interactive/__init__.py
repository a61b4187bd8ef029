"""State of an interactive build (`acbuild begin ... end`): `workpath` (the locked
.acbuild/ directory), `history` (the steps recorded as ACIfile lines), `modify`
(`--modify IMAGE`: edit an existing image in place). May import the session and
everything else in the engine; nothing in the engine imports it."""
