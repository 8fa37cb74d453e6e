from nsrun.cni.entry import main

main()
