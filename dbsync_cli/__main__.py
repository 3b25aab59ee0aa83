from dbsync_cli.cli.app import main

main()
