from acbuild.cli import main

raise SystemExit(main())
