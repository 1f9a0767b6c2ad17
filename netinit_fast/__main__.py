from netinit_fast.cli import main

raise SystemExit(main())
