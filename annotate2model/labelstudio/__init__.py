"""Label Studio: the only package that imports `label_studio_sdk`.

It runs a local server (`server`), sets up and saves the workspace's connection to one
(`connection`), talks to it (`client`), reads labeling configs (`config`), builds annotation and
prediction JSON and parses annotations (`results`), picks a task's label (`policies`), puts
images into a project (`collect`) and brings a project into the store (`sync`). Everything it
hands out is a plain record, never an SDK object.
"""
