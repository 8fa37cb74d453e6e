from nsrun.cli import main

main()
