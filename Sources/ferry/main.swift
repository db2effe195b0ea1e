import FerryCLI

await FerryCommand.main()
