from sldarts.cli import main

raise SystemExit(main())
