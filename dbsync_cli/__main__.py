from dbsync_cli.cli.app import main

if __name__ == "__main__":  # not when a child process (capture) imports it
    main()
