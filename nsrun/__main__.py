from nsrun.cli.entry import main

main()
