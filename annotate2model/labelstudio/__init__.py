"""Label Studio: the only package that imports `label_studio_sdk`.

It runs a local server (`server`), talks to one (`client`), reads labeling configs (`config`), puts
images into a project (`collect`) and brings a project into the store (`sync`). Everything it hands
out is a plain record, never an SDK object.
"""
