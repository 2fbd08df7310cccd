from vdb.cli import main

raise SystemExit(main())
