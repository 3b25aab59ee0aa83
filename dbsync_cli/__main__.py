if __name__ == "__main__":  # not when a child process (capture) imports it: it needs none of the command line
    from dbsync_cli.cli.app import main

    main()
