from svctrace.cli import main

raise SystemExit(main())
