from nanofly.cli import main

raise SystemExit(main())
