from r1local.cli import main

raise SystemExit(main())
